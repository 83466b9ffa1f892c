"""`innerloop up`: plan (pure) and the loop that runs each service's sync, forwards and logs."""
