from agentcg.cli.main import main

main()
