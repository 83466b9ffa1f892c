from innerloop.cli.main import main

main()
