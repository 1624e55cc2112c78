from podiam.cli import main

main()
