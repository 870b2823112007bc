from cdcstream.cli.main import main

main()
