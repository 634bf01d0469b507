# Runs after boot.py on every start: the node's measuring loop.
import node

node.main()
