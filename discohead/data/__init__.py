"""Turning raw talking-head videos into the face-cropped shards the trainer reads.

Everything here is plain Python (no Ray): the preprocessing job in
``pipelines/preprocess.py`` only distributes these functions over a cluster.
"""
