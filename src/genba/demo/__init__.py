"""`genba demo`: the whole stack in one run, from raw member data to a served model.

``run`` holds the stages and the verb, ``members`` the consortium it plays,
``report`` the Markdown report and plots, ``serve`` the serving stage (policy
server, simulated machine over OPC UA, bridge). Nothing here imports back into
``run``, so the package has no import cycle.
"""
