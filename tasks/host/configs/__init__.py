"""The host's configuration files: editing TOML, JSON and YAML documents
(``docedit``) and writing a file without losing a hand edit
(``confwrite``); for the configs step."""
