from agentcg.cli.entry import main

main()
