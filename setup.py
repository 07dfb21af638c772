"""Everything is in pyproject.toml except one step setuptools cannot declare: installing
``transformer_toolkit_lm_eval.pth`` next to the packages (in a regular and an editable install),
so that ``lm_eval --model ttk`` finds our model (see ``transformer_toolkit_lm_eval.py``)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "transformer_toolkit_lm_eval.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        # an editable install writes only what lands in its wheel folder, install_lib
        folder = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        self.copy_file(PTH, os.path.join(folder, PTH), preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithPth})
