"""transfer-bench: for this target task and this much labelled data, which transfer strategy wins?"""

__version__ = "0.1.0"
