"""What each message does: plain async functions taking the message's data and their dependencies.

`detection.handle_image_uploaded` analyses an uploaded image; `recognition` groups faces into persons.
They return the events to publish; the consumer publishes them and then acknowledges the message.
"""
