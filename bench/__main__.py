from bench import sim


def main() -> None:
    sim.run()


if __name__ == "__main__":
    main()
