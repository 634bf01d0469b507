# Runs first on every start. Modules live in /lib (on the path by default on the ESP32).
# Nothing here may fail: the node must always reach main.py.
