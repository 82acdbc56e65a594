"""Code of one notebook each: its defaults, controls, `run(values) -> history` and `figure(history)`.

A chapter module may import anything in the package, but no other chapter, and nothing imports a chapter
except its notebook and its tests. Chapters with no code of their own (00, 01, 02, 10) have no module.
"""
