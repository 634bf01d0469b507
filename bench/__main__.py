from bench import noise, sim, store, wire


def main() -> None:
    sim.run()
    wire.run()
    noise.run()
    store.run()


if __name__ == "__main__":
    main()
