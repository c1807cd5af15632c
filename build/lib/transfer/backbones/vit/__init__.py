"""The Vision Transformer family: ViTs from timm, DINO, iBOT, MAE, DINOv2, MoCo v3, mmpretrain (docs/VIT.md)."""
