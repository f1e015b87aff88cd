"""The guided mark (watermark v2): a keyed codeword steered into the late reverse steps toward what a robust decoder
reads, read back without inversion, through rotations, crops, blur and JPEG re-saves.

- scheme: the codeword and how hard guidance pushes      - nets: the decoder, its frame, views, reader, folder
- guidance: the x0 hook, marks with random codewords     - statistic: the calibrated zero-bit test and the payload
- read: the decoder in use, its logits in fixed batches  - calibrate: the nulls stored with the decoder
- train: the decoder and its reader
"""
