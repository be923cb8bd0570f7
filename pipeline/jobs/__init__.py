"""The Ray adapters: the batch job (Ray Data), the stream job (consumer actors + Serve handle), the Serve app with
its HTTP inputs and guard, cluster set-up and pre-flight checks. Jobs import the runtime, never research or the CLI.
"""
