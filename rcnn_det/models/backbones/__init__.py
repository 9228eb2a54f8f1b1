from .resnet import BasicBlock, Bottleneck, ResNet
from .swin import SwinTransformer
from .vgg import VGG

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet', 'SwinTransformer', 'VGG']
