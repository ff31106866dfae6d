"""Data sources: random-access collections of {'image': HWC array, 'label': int} records.

Images are uint8 (0-255) or float32 in [0, 1]; transforms.py turns them into normalized
float32 model inputs. input_pipeline.py picks a source by the config's ``dataset``:
digits.py (built in), image_folder.py (``<root>/<split>/<class>/*``), tfds_source.py (any TFDS
name, array_record through ``tfds.data_source``); in_memory.py holds sources decoded into
memory.
"""
