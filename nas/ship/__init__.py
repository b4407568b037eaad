"""Shipping a network: export (TorchScript, torch.export, ONNX fp32/int8), deployment checks, predict."""
