from bench import (flood, forward, gateway, hostile, http_clients, noise, ota, ota_fleet, ota_heap, ota_powercut, public,
                   ota_update, payload, provision, region, region_failover, region_load, region_scenarios, sensorthings, sim,
                   sim_time, start_heap, status_page, store, tls, wire)


def main() -> None:
    sim.run()
    sim_time.run()
    start_heap.run()
    ota_heap.run()
    ota_update.run()
    ota_powercut.run()
    ota_fleet.run()
    tls.run()
    wire.run()
    noise.run()
    payload.run()
    from bench import payload_v2  # beside payload's: what a v2 record costs against a v1 one
    payload_v2.run()
    gateway.run()
    from bench import ingest_writer  # the writer thread's path alone, against main's
    ingest_writer.run()
    from bench import paho_alone  # the ceiling of gateway.run's ingest ratio: paho alone
    paho_alone.run()
    from bench import ingest_floor  # and what the rest of the gateway leaves were parsing free
    ingest_floor.run()
    flood.run()
    http_clients.run()
    ota.run()
    forward.run()
    sensorthings.run()
    store.run()
    region.run()
    region_load.run()
    region_failover.run()
    region_scenarios.run()
    provision.run()
    hostile.run()
    public.run()
    status_page.run()


if __name__ == "__main__":
    main()
