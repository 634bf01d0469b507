"""The development machinery the tests (tests/) and the benchmarks (bench/) share, so that neither
imports the other. Nothing the gateway or the technician's CLI runs imports it; some of it needs
the `dev` extra (numpy, scipy, micropython).

- `micropython`: run code under the real MicroPython unix port (`run_mpy`), the firmware's paths
- `fleetsim`: the gateway's side of running the fleet for the firmware's tests: signed envelopes,
  releases built from firmware/, a stand-in gateway that offers them and serves their pieces
- `noise_ref`: references of the noise pipeline: test signals, float64 designs, a 32-bit twin
- `noise_kernel`: the noise kernel under micropython, in C (`noise_c/`) and on the Xtensa model
- `mpyfile`: .mpy files from mpy-cross, read back to each function's machine code
- `xtensa`: the ESP32's Xtensa core, enough to run and count one viper function
- `batches`: firmware-made payload batches, a fixed seeded stream
- `spoolfile`: a node's spool (its files under sp/) decoded on the host by the firmware's recline
- `sensorthings_server`: a strict OGC SensorThings contract server
- `page_client`: a status-page client refreshing as fast as it can
- `fleetsite`: a site as an operator runs the fleet over the air (generated broker, the gateway
  process, a release key and releases, simulated nodes as .mpy), for e2e tests and benchmarks
- `faultrig`: the fault suite's rig (broker, gateway process, simulated nodes) and ledger judge
- `hostile`: the hostile-input scenarios as drivers on the rig
- `regionrig`: the regional rig (gateways with their own Mosquitto, one VictoriaMetrics, one central
  broker, simulated nodes with broker lists) and the regional ledger judge
- `tcpproxy`: a loopback TCP proxy a test cuts and mends (a gateway cut off from the region)
- `waits`: `wait_for`, how tests, rigs and benchmarks wait (on something observable, with a deadline)
- `results`: benchmark figures appended to build/bench/results.jsonl
"""
