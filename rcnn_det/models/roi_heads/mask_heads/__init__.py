from .fcn_mask_head import FCNMaskHead, MaskTargetRecipe

__all__ = ['FCNMaskHead', 'MaskTargetRecipe']
