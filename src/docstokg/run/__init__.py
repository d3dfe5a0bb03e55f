"""The run layer: a download run over a manifest (runner, pipeline, heartbeat, reporting).

It sits above the services and the download layer and below the CLI: it
receives its collaborators (:mod:`docstokg.run.bootstrap`) and drives each
job through the pipeline.
"""
