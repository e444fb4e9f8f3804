from agent_service.main import main

main()
