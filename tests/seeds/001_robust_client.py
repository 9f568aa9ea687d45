# Seed 001_b78f85ce194f8850.txt, lines 89-127 ("Клієнт з обробкою помилок"), copied verbatim.
# tests/seeds.rs runs it with only localhost:8000 replaced by the server's address.
import asyncio
import websockets
from websockets.exceptions import ConnectionClosed

async def robust_client():
    uri = "ws://localhost:8000/ws/robust_client"
    max_retries = 3
    retry_delay = 5
    
    for attempt in range(max_retries):
        try:
            async with websockets.connect(uri) as websocket:
                print(f"✅ Підключено (спроба {attempt + 1})")
                
                while True:
                    try:
                        message = await asyncio.wait_for(
                            websocket.recv(), 
                            timeout=30.0
                        )
                        print(f"📨 {message}")
                        
                    except asyncio.TimeoutError:
                        # Ping для перевірки з'єднання
                        await websocket.ping()
                        
        except ConnectionClosed:
            print(f"⚠️ З'єднання закрито")
            if attempt < max_retries - 1:
                print(f"🔄 Повторна спроба через {retry_delay}s...")
                await asyncio.sleep(retry_delay)
            else:
                print("❌ Вичерпано спроби підключення")
                
        except Exception as e:
            print(f"❌ Помилка: {e}")
            break

asyncio.run(robust_client())
