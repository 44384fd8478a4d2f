"""Pod discovery: where the pool's endpoints come from when they are not a fixed list.

`--discovery kubernetes` lists and watches the pods the InferencePool selects (epp.discovery.kubernetes);
`--discovery file:PATH` reads a YAML file of endpoints and follows its changes (epp.discovery.file_source).
Both hand the full membership to a sink (`PickerCore`: the datastore, static endpoints added) and keep the
last known endpoints when their source cannot be read, saying so in a log line and in `epp_discovery_up`
(epp.discovery.status). `epp.discovery.options` is light (the CLI imports it); `epp.discovery.build`
builds a source.
"""
