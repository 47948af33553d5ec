"""Our own tiny Florence-2-shaped remote code (the demo checkpoint's and the tests' fixture).

These three files are *data* for the project: they are laid out in a Hugging Face hub cache as
the code files of ``florence-patch/florence-2-tiny`` and loaded by transformers with
``trust_remote_code=True``. They deliberately keep the names, signatures and statement shapes of
Microsoft's Florence-2 remote code at a revision that still needs the output-class fix, so the same
codemods that repair the real files repair these, and the unpatched files break the same way.
Nothing in the library imports them as a package module.
"""
