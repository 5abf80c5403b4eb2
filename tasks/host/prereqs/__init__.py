"""The prerequisites on this host: finding what the catalog
(``tasks/catalog.py``) names (``probe``) and the commands that install it
(``fixes``); for the check step."""
