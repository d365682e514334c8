"""The Faust worker: the app, the member agent and its Faust-free processor, acknowledgements,
the outbox, clocks, reorder buffer, deadlines, dead letters, rule reload, the RocksDB store
and the adjustments to Faust (`compat`). The only room that imports faust (with bench's floor
in tools/)."""
