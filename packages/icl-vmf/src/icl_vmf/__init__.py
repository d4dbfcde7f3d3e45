"""icl_vmf: Interactive Continual Learning with fast (ViT + CL-vMF memory) and slow (multimodal LLM) thinking.

Qi et al., "Interactive Continual Learning: Fast and Slow Thinking", CVPR 2024 (arXiv 2403.02628).
"""
