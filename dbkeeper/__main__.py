from dbkeeper.cli import main

main()
