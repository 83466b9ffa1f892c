"""The CLI-agent protocol: frames, multiplexed sessions, control messages, the client.

Standard library only: the agent imports this package inside arbitrary app
containers. Importing the package imports none of its modules.
"""
