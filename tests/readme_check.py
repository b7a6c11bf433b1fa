"""Checks that every code block README.md marks with `<!-- example: PATH -->` is exactly the
text of PATH, so the README's program is the one CI builds and runs.

    python3 tests/readme_check.py README.md
"""
import pathlib
import re
import sys

readme = pathlib.Path(sys.argv[1])
root = readme.parent
text = readme.read_text()
blocks = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
if not blocks:
    sys.exit(f"{readme}: no '<!-- example: PATH -->' block found")
failed = False
for path, block in blocks:
    source = (root / path).read_text()
    if block != source:
        failed = True
        print(f"{readme}: the block marked {path} differs from {path}; paste the file into the README")
        for i, (a, b) in enumerate(zip(block.splitlines(), source.splitlines())):
            if a != b:
                print(f"  first difference, line {i + 1}:\n    README: {a}\n    {path}: {b}")
                break
    else:
        print(f"{readme}: the block marked {path} is {path} ({len(source.splitlines())} lines)")
sys.exit(1 if failed else 0)
