"""The pure tagging engine, its rule language and the member state it keeps."""

from taggers.compiled import use_compiled_build

# "mypyc" when the compiled modules run, else why they do not (taggers/compiled.py).
ENGINE_BUILD = use_compiled_build(__path__)
