# Seed 001_b78f85ce194f8850.txt, lines 53-71 ("Простий клієнт"), copied verbatim.
# tests/seeds.rs runs it with only localhost:8000 replaced by the server's address.
import asyncio
import websockets

async def simple_client():
    uri = "ws://localhost:8000/ws/my_client"
    
    async with websockets.connect(uri) as websocket:
        # Отримати привітання
        greeting = await websocket.recv()
        print(f"Сервер: {greeting}")
        
        # Відправити повідомлення
        await websocket.send("Привіт, сервере!")
        
        # Отримати відповідь
        response = await websocket.recv()
        print(f"Сервер: {response}")

asyncio.run(simple_client())
