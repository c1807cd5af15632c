"""The ResNet family: torchvision-layout ResNets from any SSL codebase (docs/CHECKPOINTS.md)."""
