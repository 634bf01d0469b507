from bench import noise, sim, tls, wire


def main() -> None:
    sim.run()
    tls.run()
    wire.run()
    noise.run()


if __name__ == "__main__":
    main()
