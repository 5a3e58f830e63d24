# IPython settings of the autofocus profile (read by `autofocus shell` and by
# `ipython --profile-dir=profiles/profile_autofocus`). This folder belongs to the
# repository or to the installed package, so the command history is kept in IPython's own
# folder ($IPYTHONDIR, default ~/.ipython) instead of history.sqlite here.
import os

from IPython.paths import get_ipython_dir

c = get_config()  # noqa: F821 (provided by IPython when it loads this file)

_ipython_dir = get_ipython_dir()
os.makedirs(_ipython_dir, exist_ok=True)
c.HistoryManager.hist_file = os.path.join(_ipython_dir, "autofocus_history.sqlite")
