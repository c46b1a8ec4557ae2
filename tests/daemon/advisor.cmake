# Tests for daemon/advisor (sluice_advisor). Included from a CMakeLists.txt
# that already found GTest; paths are relative to this file.
if(TARGET sluice_advisor)
  include(GoogleTest)
  add_executable(test_advisor ${CMAKE_CURRENT_LIST_DIR}/test_advisor.cpp)
  target_link_libraries(test_advisor PRIVATE sluice_advisor GTest::gtest_main)
  gtest_discover_tests(test_advisor DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()
