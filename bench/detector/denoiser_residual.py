"""A learned-denoiser residual as extra features for the edit expert: measured, and rejected as a background
shortcut. Leave one family out on the training families (ddpm-c is not used).

    python bench/detector/denoiser_residual.py            # the residual of the image as it is
    python bench/detector/denoiser_residual.py --floor    # after the background floor (levels <= 32 -> 0)

A small CNN (4 convolutions of 32 channels) is trained to predict Gaussian noise on the training reals; the
expert's features (detector.experts.expert_features) get summary statistics of its residual on the stroke,
its cores, its rim and the background, and a histogram of it on the stroke. Without the floor the residual
reads what lies below 32 levels, which is where the generators' faint backgrounds are; BENCHMARKS.md ("The
edit expert") records how that gain vanished with the floor and collapsed when a forger tidied before
blurring.
"""
import numpy as np, torch, torch.nn as nn, sys, time
from sklearn.ensemble import HistGradientBoostingClassifier
from detector.evaluate import PERTURBATIONS
from detector.experts import expert_features
from detector.predict import load_detector
from detector.sources import parse_generator
from detector.data import perturb_for_calibration
from detector.train import FAKE_CACHE, gather, EXPERT_EDITS
from loo_common import FAMILIES, TESTS, auc
torch.set_num_threads(2)
det = load_detector(None, device="cpu")
real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, [parse_generator(s) for s in FAMILIES], None, 0, FAKE_CACHE)
# denoiser trained on training reals only (Gaussian noise, sigma 0.02-0.3 in [-1,1] units)
torch.manual_seed(0)
D=nn.Sequential(nn.Conv2d(1,32,3,padding=1),nn.ReLU(),nn.Conv2d(32,32,3,padding=1),nn.ReLU(),nn.Conv2d(32,32,3,padding=1),nn.ReLU(),nn.Conv2d(32,1,3,padding=1))
opt=torch.optim.Adam(D.parameters(),2e-3)
t0=time.time()
for step in range(1500):
    idx=torch.randint(0,len(real_tr),(128,)); x=real_tr[idx]
    s=0.02+0.28*torch.rand(128,1,1,1); y=x+s*torch.randn_like(x)
    loss=((y-D(y)-x)**2).mean()  # D predicts the noise
    opt.zero_grad(); loss.backward(); opt.step()
print("denoiser trained %.0fs loss %.4f"%(time.time()-t0, loss.item()), flush=True)
D.eval()
FLOOR = "--floor" in sys.argv
@torch.no_grad()
def resid_feats(x):
    if FLOOR:
        x = torch.where((x + 1) * 127.5 > 32, x, torch.full_like(x, -1.0))
    r=torch.cat([D(x[i:i+512]) for i in range(0,len(x),512)])  # predicted noise = the residual
    v=(x+1)/2; stroke=(v>32/255).float(); core=(v>200/255).float(); bg=1-stroke
    edge=stroke*(1-core)
    f=[]
    for m in (stroke,core,edge,bg):
        n=m.sum((1,2,3)).clamp(min=1)
        f+= [(r.abs()*m).sum((1,2,3))/n, (r*m).sum((1,2,3))/n, ((r**2)*m).sum((1,2,3))/n]
    h=torch.stack([((r>a)&(r<=b)&(stroke>0)).float().sum((1,2,3)) for a,b in zip([-9,-.2,-.1,-.05,-.02,0,.02,.05,.1,.2],[-.2,-.1,-.05,-.02,0,.02,.05,.1,.2,9])],1)/stroke.sum((1,2,3)).clamp(min=1)[:,None]
    return torch.cat([torch.stack(f,1),h],1).numpy()
def feats(x, kind):
    lo,fe,fit,st=det.forward(x,with_stats=True)
    base=expert_features(st,fit)
    return np.c_[base,resid_feats(fit)] if kind=="resid" else base
for held in ["ddpm-bundled","ddpm-b","vae"]:
    others = torch.cat([v for k, v in fam_tr.items() if k != held])
    g = torch.Generator().manual_seed(2)
    tr=[(torch.cat([perturb_for_calibration(real_tr, k, g) for _ in range(2)]), perturb_for_calibration(others, k, g)) for k in EXPERT_EDITS]
    for kind in ["shipped","resid"]:
        X=np.concatenate([np.r_[feats(r,kind),feats(f,kind)] for r,f in tr]); Y=np.concatenate([np.r_[np.zeros(len(r)),np.ones(len(f))] for r,f in tr])
        c=HistGradientBoostingClassifier(max_iter=300,learning_rate=0.1,early_stopping=True,random_state=0).fit(X,Y)
        a=[]
        for t in TESTS:
            ge=torch.Generator().manual_seed(1)
            r=PERTURBATIONS[t][0](real_cal,ge); f=PERTURBATIONS[t][0](fam_cal[held],ge)
            a.append(auc(c.decision_function(feats(r,kind)),c.decision_function(feats(f,kind))))
        print(held,kind,np.round(a,3),"mean %.3f"%np.mean(a),flush=True)
