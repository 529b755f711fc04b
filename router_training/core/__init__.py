"""The code that runs on the device and in training alike: features, images, profile, scoring, ood and
splits. It imports numpy, Pillow and onnxruntime only (and the standard library), and does no work at
import time; tests/test_layers.py enforces it."""
