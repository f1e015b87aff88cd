"""Print BENCHMARKS.md tables from `detector eval --json` output and compare_inputs.py lines.

    python bench/detector/to_markdown.py --eval bench/out/detector_eval/detector_eval.json
    python bench/detector/to_markdown.py --loo bench/results/detector_loo_inputs.jsonl
"""
import argparse
import json


def eval_tables(rep: dict) -> None:
    fams = list(rep["families"])
    print("| edit | " + " | ".join(f"{f}{'' if rep['families'][f]['trained_on'] else ' (unseen)'} AUC / TPR@1% / TPR@thr"
                                    for f in fams) + " | real FPR at threshold |")
    print("|---" * (len(fams) + 2) + "|")
    for pname, row in rep["perturbations"].items():
        cells = [f"{row[f]['auc']:.3f} / {row[f]['tpr_at_1pct_fpr']:.2f} / {row[f]['tpr_at_threshold']:.2f}" for f in fams]
        print(f"| {pname} | " + " | ".join(cells) + f" | {row['real_fpr_at_threshold']:.3f} |")
    print()
    print("| group | edit | AUC | TPR@1%FPR | TPR at threshold |")
    print("|---|---|---|---|---|")
    for pname, row in rep["perturbations"].items():
        for g in ("trained families", "unseen families"):
            if g in row:
                m = row[g]
                print(f"| {g} | {pname} | {m['auc']:.3f} | {m['tpr_at_1pct_fpr']:.2f} | {m['tpr_at_threshold']:.2f} |")
    print()
    print("| out-of-domain set | n | flagged | by rules | by score |")
    print("|---|---|---|---|---|")
    ood = rep["out_of_domain"]
    for k, v in ood.items():
        if k != "false flags on in-domain images":
            print(f"| {k} | {v['n']} | {v['flagged']:.3f} | {v['by_rules']:.3f} | {v['by_score']:.3f} |")
    for k, v in ood["false flags on in-domain images"].items():
        print(f"| (in domain) {k} | {v['n']} | {v['flagged']:.3f} | {v['by_rules']:.3f} | {v['by_score']:.3f} |")
    print()
    print(f"reliability ECE {rep['reliability']['ece']:.3f}; throughput {rep['throughput']}")
    print()
    print("| source | AUC | TPR@1%FPR | TPR at threshold |")
    print("|---|---|---|---|")
    for k, m in rep["sources"].items():
        print(f"| {k} | {m['auc']:.3f} | {m['tpr_at_1pct_fpr']:.2f} | {m['tpr_at_threshold']:.2f} |")


def loo_table(lines: list[dict]) -> None:
    print("| input | floor | stay-positive | held-out family | clean AUC / TPR@1% | tidy AUC / TPR@1% | JPEG75 AUC / TPR@1% "
          "| tidy real FPR@thr |")
    print("|---|---|---|---|---|---|---|---|")
    for r in lines:
        cells = [f"{r[k]['auc']:.3f} / {r[k]['tpr_at_1pct_fpr']:.2f}" for k in ("clean", "tidy", "jpeg75")]
        print(f"| {r['input']} | {r.get('background_floor', 0)} | {'yes' if r.get('stay_positive') else ''} | {r['held_out']} | "
              + " | ".join(cells)
              + f" | {r['tidy']['fpr_at_threshold']:.3f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval")
    ap.add_argument("--loo", nargs="*")
    a = ap.parse_args()
    if a.eval:
        eval_tables(json.load(open(a.eval)))
    for path in a.loo or []:
        loo_table([json.loads(line) for line in open(path) if line.strip()])
