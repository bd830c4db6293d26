"""The notebook adapters: the anywidget dashboard, the message stream that feeds it, Stop routing, the static
fallback, and the ``%ptt``/``%%ptt`` magics with their session. The only folder that imports IPython or
anywidget; nothing outside it imports it at module import time."""
