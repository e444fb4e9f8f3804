from chat_service.server import main

main()
