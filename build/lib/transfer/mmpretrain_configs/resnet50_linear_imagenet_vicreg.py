# ImageNet linear evaluation, VICReg protocol (evaluate.py --weights freeze, README: --lr-head 0.02):
# the backbone frozen and in eval mode (frozen_stages=4 and norm_eval=True: no gradient, BatchNorm
# statistics never updated), only the linear head trained, 100 epochs, weight decay 1e-6.
_base_ = ['./_base_imagenet_vicreg.py']
protocol = 'linear'
