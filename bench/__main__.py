from bench import sim, wire


def main() -> None:
    sim.run()
    wire.run()


if __name__ == "__main__":
    main()
