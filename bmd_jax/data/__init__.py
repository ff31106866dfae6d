"""Data sources: random-access collections of {'image': HWC array, 'label': int} records.

Images are uint8 (0-255) or float32 in [0, 1]; transforms.py turns them into normalized
float32 model inputs. input_pipeline.py picks a source by the config's ``dataset``.
"""
