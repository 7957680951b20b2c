"""Inference with exported ONNX models: the session and its metadata, tiled prediction, the threaded
folder pipeline behind `weedseg predict`, and the files it writes."""
