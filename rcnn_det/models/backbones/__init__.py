from .resnet import BasicBlock, Bottleneck, ResNet
from .vgg import VGG

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet', 'VGG']
