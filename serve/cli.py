"""``gankd-demo`` entry point (the serve issue builds the runtime and the Gradio app)."""

import sys


def main() -> int:
    print("gankd-demo: not built yet: the runtime and Gradio demo arrive with the serve issue, after export",
          file=sys.stderr)
    return 2
