"""Quantization methods: one module each, registered with core/quant/registry.register_quantizer."""
